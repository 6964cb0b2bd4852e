"""What is optimized: similarity terms, regularizers (GradICON, Jacobian, hyperelastic, bending,
diffusion) and the NePhi loss, all as named terms with units.
"""
