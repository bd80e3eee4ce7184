"""vlmedge.jetson"""
