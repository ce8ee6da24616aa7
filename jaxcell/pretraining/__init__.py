"""Pretraining one backbone on a large image collection (a "CellNet", BioNIC's question 2).

    objectives.py  channel identity (BioNIC), supervised, self-supervised (SimCLR): batches and losses
    backbone.py    the network: its head per objective, its compute dtype, its input normalisation
    steps.py       the data-parallel step: global batch over the mesh's 'data' axis, fused chunks
    probe.py       the least-squares probe on held-out images that scores the features as training goes
    run.py         the whole run: data, held-out split, resume, checkpoints, probe, the exported weights

The command line is jaxcell/pretrain.py (`python -m jaxcell.pretrain`).
"""
