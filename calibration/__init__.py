"""vlmedge.calibration"""
