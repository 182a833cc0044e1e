output "instance_identifier" {
  description = "RDS instance identifier."
  value       = aws_db_instance.this.identifier
}

output "address" {
  description = "DNS name of the instance (follows a Multi-AZ failover)."
  value       = aws_db_instance.this.address
}

output "port" {
  description = "PostgreSQL port."
  value       = aws_db_instance.this.port
}

output "allocated_storage_gb" {
  description = "Allocated storage."
  value       = aws_db_instance.this.allocated_storage
}

output "security_group_id" {
  description = "Security group of the instance."
  value       = aws_security_group.this.id
}

output "store_url_secret_arn" {
  description = "Secrets Manager secret holding the full store URL (TENANTGATE__STORE__URL)."
  value       = aws_secretsmanager_secret_version.store_url.arn # the version: tasks start only once the value exists
}

output "kms_key_arn" {
  description = "KMS key of the storage, Performance Insights and the store URL secret."
  value       = aws_kms_key.this.arn
}
