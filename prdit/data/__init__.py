"""prdit.data"""
