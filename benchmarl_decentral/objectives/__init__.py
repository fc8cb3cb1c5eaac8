"""objectives of benchmarl-decentral."""
