"""vlmedge.export"""
