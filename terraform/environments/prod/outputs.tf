output "alb_dns_name" {
  description = "Point the proxy's public host name and admin_hostname here (Route 53 alias to alb_zone_id)."
  value       = module.compute.alb_dns_name
}

output "alb_zone_id" {
  description = "Hosted zone id of the ALB."
  value       = module.compute.alb_zone_id
}

output "admin_url" {
  description = "The admin API, through the ALB (reachable from admin_allowed_cidrs only)."
  value       = "https://${var.admin_hostname}"
}

output "ecs_cluster" {
  description = "ECS cluster name."
  value       = module.compute.cluster_name
}

output "ecs_services" {
  description = "ECS service names."
  value       = module.compute.service_names
}

output "admin_token_secret_arn" {
  description = "Secrets Manager ARN of the platform admin token (aws secretsmanager get-secret-value --secret-id ...)."
  value       = module.compute.platform_secret_arns["admin_token"]
}

output "upstream_nlb_addresses" {
  description = "Fixed addresses of the internal upstream NLB."
  value       = module.compute.upstream_nlb_addresses
}

output "alarm_topic_arn" {
  description = "SNS topic of the alarms (subscribe a pager here)."
  value       = module.monitoring.alarm_topic_arn
}

output "dashboard" {
  description = "CloudWatch dashboard name."
  value       = module.monitoring.dashboard_name
}

output "nat_public_ips" {
  description = "Egress IPs of the services (allow-list them at external JWKS endpoints if those are restricted)."
  value       = module.network.nat_public_ips
}
