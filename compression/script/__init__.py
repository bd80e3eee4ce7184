"""Script — graph-structured and query-conditioned visual-token pruning (spec `../shared/specs/script.md`),
paper semantics: pure functions per stage plus one stateless method (`--method script`).

- `gsp.py`        similarity, bipartite redundancy and the GSP keep mask;
- `relevance.py`  query relevance r (LLM-embedding and CLIP forms);
- `dpp.py`        exact greedy MAP of the conditional DPP (incremental Cholesky);
- `select.py`     GSP ∩ DPP, filled to the budget;
- `method.py`     the registered `Script` method.
"""
from vlmedge.compression.script.dpp import fast_greedy_map, naive_head_dpp
from vlmedge.compression.script.gsp import gsp_prune, gsp_redundancy, head_structural_score, num_gsp, similarity
from vlmedge.compression.script.method import Script
from vlmedge.compression.script.relevance import (cdpruner_relevance, head_relevance, normalize_relevance,
                                                  relevance_clip, relevance_llm_embed)
from vlmedge.compression.script.select import intersect_and_fill, script_select

__all__ = ["Script", "similarity", "gsp_redundancy", "gsp_prune", "num_gsp", "head_structural_score",
           "fast_greedy_map", "naive_head_dpp", "normalize_relevance", "relevance_llm_embed", "relevance_clip",
           "head_relevance", "cdpruner_relevance", "intersect_and_fill", "script_select"]
