output "replication_group_id" {
  description = "The replication group."
  value       = aws_elasticache_replication_group.this.id
}

output "member_clusters" {
  description = "Cache cluster ids of the group's nodes (CloudWatch dimension CacheClusterId), known at plan time."
  value       = local.member_clusters
}

output "primary_endpoint_address" {
  description = "Primary endpoint (follows a failover)."
  value       = aws_elasticache_replication_group.this.primary_endpoint_address
}

output "security_group_id" {
  description = "Security group of the nodes."
  value       = aws_security_group.this.id
}

output "redis_url_secret_arn" {
  description = "Secrets Manager secret holding the full Redis URL with the auth token (TENANTGATE__REDIS__URL)."
  value       = aws_secretsmanager_secret_version.redis_url.arn # the version: tasks start only once the value exists
}

output "kms_key_arn" {
  description = "KMS key of the data at rest, the logs and the Redis URL secret."
  value       = aws_kms_key.this.arn
}
