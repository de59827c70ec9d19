"""KubeRay deployment files, and the generators that render some of them from ``configs/``."""
