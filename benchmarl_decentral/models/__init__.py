"""models of benchmarl-decentral."""
