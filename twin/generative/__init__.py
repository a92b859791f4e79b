"""The generative and predictive twin of issue 18 (`000_2c676631a2e0d96a.txt`, eq. 23-26): a multi-task VAE
over per-instance (state, action) features that makes synthetic pairs, a multi-task LSTM that predicts the
next state and the reward, the physical buffers (successful / failed) and the twin buffer (docs/twin.md,
"Generative and predictive twin")."""
