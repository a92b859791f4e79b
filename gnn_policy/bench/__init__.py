"""`dm-bench`: the paper's evaluation (section VI.C, Figs. 4-7) over every registered policy.

`experiments` builds the cases and measures policies on them, `plots` draws the figures and `cli`
is the command. Nothing heavy is imported here, so that the command can fix thread counts first.
"""
