"""The AWS provider: ECS for processes, DynamoDB for state, S3 for objects, CloudWatch Logs for logs."""
