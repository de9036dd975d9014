"""Clustering: k-means weight sharing with trainable centroids, per-channel and
sparsity-preserving variants, and a compact ONNX export (uint8 indices + codebook)."""

from slimkit.storage.codebook import compact_initializers, expand_compact
from slimkit.techniques.clustering.api import cluster
from slimkit.techniques.clustering.config import ClusteringConfig
from slimkit.techniques.clustering.kmeans import kmeans_1d, kmeans_1d_per_channel
from slimkit.techniques.clustering.snap import ClusterSnap

__all__ = [
    "ClusterSnap",
    "ClusteringConfig",
    "cluster",
    "compact_initializers",
    "expand_compact",
    "kmeans_1d",
    "kmeans_1d_per_channel",
]
