"""prdit.evaluation"""
