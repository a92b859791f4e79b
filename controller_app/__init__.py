"""Ryu OpenFlow application: collects NF load and link statistics, steers flows and executes migrations.

`app` is the Ryu shell and `rest` its REST API; `core.Controller` runs the period over the parts that
need no switch: `steering`, `state_collection`, `execution`, `costs`, `views`, `transitions`
(with `instances` and `decisions`, the records they share). `config` holds the inputs, `dmctl` the CLI
and `demo` the end-to-end demo.
"""
