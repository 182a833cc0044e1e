output "alb_dns_name" {
  description = "DNS name of the public ALB: point the proxy's host name and admin_hostname at it (alias records)."
  value       = aws_lb.public.dns_name
}

output "alb_zone_id" {
  description = "Hosted zone of the ALB, for Route 53 alias records."
  value       = aws_lb.public.zone_id
}

output "alb_arn_suffix" {
  description = "arn_suffix of the ALB (CloudWatch dimension LoadBalancer)."
  value       = aws_lb.public.arn_suffix
}

output "proxy_target_group_arn_suffix" {
  description = "arn_suffix of the proxy target group."
  value       = aws_lb_target_group.proxy.arn_suffix
}

output "admin_target_group_arn_suffix" {
  description = "arn_suffix of the admin target group."
  value       = aws_lb_target_group.admin.arn_suffix
}

output "cluster_name" {
  description = "The ECS cluster."
  value       = aws_ecs_cluster.this.name
}

output "service_names" {
  description = "ECS services by role."
  value = {
    proxy = aws_ecs_service.proxy.name
    admin = aws_ecs_service.admin.name
    demo  = aws_ecs_service.demo.name
  }
}

output "security_group_ids" {
  description = "Security groups of the services (database and cache modules admit these)."
  value = {
    alb          = aws_security_group.alb.id
    proxy        = aws_security_group.proxy.id
    admin        = aws_security_group.admin.id
    upstream_nlb = aws_security_group.upstream_nlb.id
    demo         = aws_security_group.demo.id
  }
}

output "upstream_nlb_addresses" {
  description = "Fixed private addresses of the internal upstream NLB (what the proxies' routes point at)."
  value       = local.upstream_nlb_ips
}

output "platform_secret_arns" {
  description = "Secrets Manager ARNs of the admin token, the secret key and the API key pepper."
  value       = { for k, s in aws_secretsmanager_secret.platform : k => s.arn }
}

output "task_definition_families" {
  description = "Task definition families (the deploy workflow registers new revisions of these)."
  value = {
    proxy = aws_ecs_task_definition.proxy.family
    admin = aws_ecs_task_definition.admin.family
    demo  = aws_ecs_task_definition.demo.family
  }
}
