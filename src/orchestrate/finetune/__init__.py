"""LoRA fine-tuning of a local model on the crew's own good answers, tracked in MLflow.

``data`` reads and checks the training examples (JSONL chats, prompt/completion pairs,
or the approved tasks of earlier runs) and tokenises them; ``training`` runs the loop
(torch AdamW over a peft LoRA model) under a device lease; ``checkpoints`` saves and
restores everything a resume needs; ``tracking`` records parameters, metrics and the
adapter in MLflow. Only the CLI imports this package, and torch, transformers, peft and
mlflow are imported inside the functions that need them.
"""
