"""Configs are data: the packaged YAML defaults, merging and overrides, the command-line option table,
and every validation check.
"""
