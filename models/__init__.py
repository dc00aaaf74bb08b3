"""Model definitions and how models travel through MLflow. Models know nothing of Ray or DDP."""
