"""Post-processing: fragments, agglomeration and scoring of an affinity volume held in memory."""
