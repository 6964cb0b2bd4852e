"""The networks: NePhi field networks (modulated SIREN), coordinate networks of the IO modes, the
encoder, and the self-describing checkpoint format.
"""
