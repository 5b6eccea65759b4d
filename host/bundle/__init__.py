"""The host side of debug bundles: verify them, and make reports of them."""
