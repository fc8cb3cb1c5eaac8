"""reporting of benchmarl-decentral."""
