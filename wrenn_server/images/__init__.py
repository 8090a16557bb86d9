"""Builder of the guest base image (Debian rootfs with envd and the guest init)."""
