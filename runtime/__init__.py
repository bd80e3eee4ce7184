"""Runtime: backends, the streaming session, the token store and memory planning."""
from vlmedge.runtime.session import Answer, FrameStats, StreamingSession

__all__ = ["Answer", "FrameStats", "StreamingSession"]
