"""prdit.models"""
