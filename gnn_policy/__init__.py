"""Migration policies over the shared cluster state: the graph-network agent, its baselines and the exact solver.

- `base`: the interface every policy implements (`Problem`, `Decision`, `Policy`) and `score`, which scores a
  decision through the twin's cost model; `registry`: policies by name.
- `baselines` (OFM, Size-greedy, Pairwise, Random) and `plan`, the move bookkeeping they share with the
  translator; `optimal`: problem (3)-(6) solved with HiGHS, the yardstick.
- The GN agent: `graph` (the state as a graph), `gn` (the network), `views` (the double GNN's graphs),
  `actions` (the action distribution, `realise`, `objective`), `agent` (`DeepMigration` and its guard),
  `translator` (loads to flow migrations) with `balancing` and `refinement`, `imitation`, `train` (`dm-train`)
  and `checkpoint`.
- `bench`: `dm-bench`, the experiments of Figs. 4-7.
"""
