"""The residual twin of issue 18 (`002_90c4d10f2b539789.txt`, eq. (15)-(16)): s' = s + f(s, a), f a graph
network over the cluster graph, fitted on recorded transitions (docs/twin.md, "Residual twin")."""
