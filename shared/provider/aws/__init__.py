"""The ``aws`` provider: the rack on ECS, CloudFormation, DynamoDB, S3, CloudWatch Logs and ECR.

Only this package imports aioboto3, and only inside functions (lazily): importing the package costs nothing,
so ``convox --version`` and the rest of the CLI start as fast as before. The endpoint comes from the standard
AWS settings (``AWS_ENDPOINT_URL`` points it at moto in the tests).
"""
