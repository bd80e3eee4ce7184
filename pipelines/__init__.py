"""vlmedge.pipelines"""
