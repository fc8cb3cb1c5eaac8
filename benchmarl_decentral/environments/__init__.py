"""environments of benchmarl-decentral."""
