"""nn of benchmarl-decentral."""
