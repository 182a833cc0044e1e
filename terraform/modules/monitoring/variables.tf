variable "name" {
  description = "Name prefix, e.g. tenantgate-prod."
  type        = string
}

variable "environment" {
  description = "Environment name (dev, staging, prod): the Environment dimension of the proxy metrics."
  type        = string
}

variable "log_retention_days" {
  description = "Retention of the services' log groups."
  type        = number
  default     = 365

  validation {
    condition     = contains([1, 3, 5, 7, 14, 30, 60, 90, 120, 150, 180, 365, 400, 545, 731, 1096, 1827, 2192, 2557, 2922, 3288, 3653], var.log_retention_days)
    error_message = "log_retention_days must be a retention CloudWatch Logs accepts."
  }
}

variable "metrics_namespace" {
  description = "CloudWatch namespace the proxy's Prometheus metrics are published to (by the ADOT sidecar, as EMF)."
  type        = string
  default     = "TenantGate"
}

variable "alarm_emails" {
  description = "Addresses subscribed to the alarm topic (each must confirm by email)."
  type        = list(string)
  default     = []
}

# --- what the alarms watch (outputs of the compute, database and cache modules) ---------

variable "alb_arn_suffix" {
  description = "arn_suffix of the public ALB."
  type        = string
}

variable "proxy_target_group_arn_suffix" {
  description = "arn_suffix of the proxy fleet's target group."
  type        = string
}

variable "admin_target_group_arn_suffix" {
  description = "arn_suffix of the admin API's target group."
  type        = string
}

variable "ecs_cluster_name" {
  description = "The ECS cluster."
  type        = string
}

variable "proxy_service_name" {
  description = "ECS service of the proxy fleet."
  type        = string
}

variable "admin_service_name" {
  description = "ECS service of the admin API."
  type        = string
}

variable "proxy_min_tasks" {
  description = "Healthy proxy tasks below this raise an alarm (the autoscaling minimum)."
  type        = number
}

variable "db_instance_identifier" {
  description = "The RDS instance."
  type        = string
}

variable "db_allocated_storage_gb" {
  description = "Allocated storage of the RDS instance (the free-space alarm fires below 10 % of it)."
  type        = number
}

variable "redis_replication_group_id" {
  description = "The ElastiCache replication group."
  type        = string
}

variable "redis_member_clusters" {
  description = "Cache cluster ids of the replication group's nodes."
  type        = list(string)
}

# --- thresholds -------------------------------------------------------------------------

variable "thresholds" {
  description = "Alarm thresholds. Defaults follow benches/RESULTS.md and the contract (changes reach proxies within 1 s)."
  type = object({
    error_5xx_percent        = optional(number, 1)
    p99_latency_seconds      = optional(number, 0.5)
    rate_limited_percent     = optional(number, 20)
    change_lag_seconds       = optional(number, 2)
    db_cpu_percent           = optional(number, 80)
    redis_engine_cpu_percent = optional(number, 75)
    redis_memory_percent     = optional(number, 80)
  })
  default = {}
}

variable "tags" {
  description = "Tags added to every resource."
  type        = map(string)
  default     = {}
}
