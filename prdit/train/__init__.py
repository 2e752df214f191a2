"""prdit.train"""
