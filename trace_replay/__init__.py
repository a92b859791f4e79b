"""Trace pipeline: LBNL/ICSI-style pcap reading (`pcap`, `flows`), trace generation (`generate`, whose
parts are in `synthetic/`), scenario and episode building (`scenarios`, `episodes`), the live sender
and sink (`live`), and the `dm-trace` command with the argparse types and the whole-file output writer
every CLI shares (`cli`, `cli_types`, `files`)."""
