"""Pretraining one backbone on a large image collection (a "CellNet", BioNIC's question 2).

    objectives.py  channel identity (BioNIC), supervised, self-supervised (SimCLR): batches and losses
    steps.py       the data-parallel step: global batch over the mesh's 'data' axis, fused chunks
    probe.py       the least-squares probe on held-out images that scores the features as training goes

The program around them (data, resume, checkpoints, the exported weights) is jaxcell/pretrain.py.
"""
