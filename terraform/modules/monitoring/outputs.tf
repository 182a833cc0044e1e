output "log_group_names" {
  description = "Log group per service: proxy, admin, demo, otel (the collector's own logs), metrics (EMF)."
  value       = { for k, g in aws_cloudwatch_log_group.this : k => g.name }
}

output "log_group_arns" {
  description = "ARNs of the same log groups."
  value       = { for k, g in aws_cloudwatch_log_group.this : k => g.arn }
}

output "kms_key_arn" {
  description = "KMS key of the log groups and the alarm topic."
  value       = aws_kms_key.this.arn
}

output "alarm_topic_arn" {
  description = "SNS topic every alarm notifies."
  value       = aws_sns_topic.alarms.arn
}

output "dashboard_name" {
  description = "The CloudWatch dashboard."
  value       = aws_cloudwatch_dashboard.this.dashboard_name
}
