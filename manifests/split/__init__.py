"""The split stage: train/val/test membership by profile (profiles), class counts and head/medium/tail
groups (stage; the group rule is manifests/groups.py, which evaluate reads too)."""
