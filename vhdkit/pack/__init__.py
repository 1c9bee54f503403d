"""The packaging layer: gzip streams, OVA packages, large objects as
verified segments, and the export stream built from them."""
