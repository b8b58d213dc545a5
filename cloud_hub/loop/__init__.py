"""The closed loop: drift-triggered federated retraining feeding staged rollouts."""
