# dev: one NAT gateway, single-AZ PostgreSQL without deletion protection, one Redis node,
# a small proxy fleet partly on Fargate Spot. Cheap, and torn down without ceremony.

variable "environment" {
  description = "Environment name; resources are named tenantgate-<environment>."
  type        = string
  default     = "dev"
}

variable "region" {
  description = "AWS region."
  type        = string
  default     = "eu-west-1"
}

variable "allowed_account_ids" {
  description = "Accounts this configuration may touch (a guard against applying with the wrong credentials). Empty: any."
  type        = list(string)
  default     = null
}

variable "availability_zones" {
  description = "The three AZs of the network, named explicitly so the layout never changes when AWS adds a zone. Set them with region."
  type        = list(string)
  default     = ["eu-west-1a", "eu-west-1b", "eu-west-1c"]
}

variable "vpc_cidr" {
  description = "VPC CIDR."
  type        = string
  default     = "10.40.0.0/16"
}

variable "single_nat_gateway" {
  description = "One NAT gateway for the three AZs."
  type        = bool
  default     = true
}

variable "log_retention_days" {
  description = "Retention of every log group (flow logs, services, Redis logs)."
  type        = number
  default     = 365
}

variable "tags" {
  description = "Extra tags on every resource."
  type        = map(string)
  default     = {}
}

# --- image and edge ---------------------------------------------------------------------

variable "image" {
  description = "tenantgate image (ghcr.io/<owner>/tenantgate:<tag> or @sha256 digest); set by the deploy workflow."
  type        = string
}

variable "image_pull_secret_arn" {
  description = "Secret with registry credentials for a private image; null for a public one."
  type        = string
  default     = null
}

variable "cpu_architecture" {
  description = "ARM64 or X86_64."
  type        = string
  default     = "ARM64"
}

variable "certificate_arn" {
  description = "ACM certificate of the HTTPS listener."
  type        = string
}

variable "admin_hostname" {
  description = "Host name routed to the admin API."
  type        = string
}

variable "admin_allowed_cidrs" {
  description = "CIDRs allowed to reach the admin API."
  type        = list(string)
}

variable "ingress_cidrs" {
  description = "CIDRs allowed to reach the public listener."
  type        = list(string)
  default     = ["0.0.0.0/0"]
}

variable "alb_deletion_protection" {
  description = "Deletion protection of the load balancers."
  type        = bool
  default     = false
}

# --- tenantgate -------------------------------------------------------------------------

variable "ratelimit_fail_mode" {
  description = "open or closed while Redis is unreachable."
  type        = string
  default     = "open"
}

variable "proxy_routes" {
  description = "TOML inline array of [[routes]]; null routes /api/v1/ to the demo upstream."
  type        = string
  default     = null
}

variable "extra_environment" {
  description = "More TENANTGATE__SECTION__KEY settings for every service."
  type        = map(string)
  default     = {}
}

variable "proxy" {
  description = "Proxy fleet sizing (see modules/compute)."
  type = object({
    cpu                          = optional(number, 1024)
    memory                       = optional(number, 2048)
    threads                      = optional(number, 1)
    min                          = optional(number, 2)
    max                          = optional(number, 10)
    target_requests_per_minute   = optional(number, 360000)
    target_cpu_percent           = optional(number, 60)
    scale_in_cooldown_seconds    = optional(number, 300)
    scale_out_cooldown_seconds   = optional(number, 60)
    deregistration_delay_seconds = optional(number, 30)
  })
  default = {
    cpu    = 512
    memory = 1024
    min    = 1
    max    = 3
  }
}

variable "admin" {
  description = "Admin API sizing."
  type = object({
    cpu                = optional(number, 512)
    memory             = optional(number, 1024)
    min                = optional(number, 2)
    max                = optional(number, 4)
    target_cpu_percent = optional(number, 60)
  })
  default = {
    min = 1
    max = 2
  }
}

variable "demo" {
  description = "Demo upstream sizing."
  type = object({
    cpu                = optional(number, 256)
    memory             = optional(number, 512)
    min                = optional(number, 1)
    max                = optional(number, 3)
    target_cpu_percent = optional(number, 70)
  })
  default = {
    min = 1
    max = 2
  }
}

variable "use_fargate_spot" {
  description = "Proxy tasks above the minimum on Fargate Spot."
  type        = bool
  default     = true
}

# --- stores -----------------------------------------------------------------------------

variable "db_instance_class" {
  description = "RDS instance class."
  type        = string
  default     = "db.t4g.medium"
}

variable "db_allocated_storage_gb" {
  description = "Initial storage."
  type        = number
  default     = 20
}

variable "db_max_allocated_storage_gb" {
  description = "Storage autoscaling ceiling."
  type        = number
  default     = 100
}

variable "db_multi_az" {
  description = "Multi-AZ standby."
  type        = bool
  default     = false
}

variable "db_deletion_protection" {
  description = "Deletion protection."
  type        = bool
  default     = false
}

variable "db_backup_retention_days" {
  description = "Automated backup retention."
  type        = number
  default     = 7
}

variable "store_require_tls" {
  description = "Force TLS to PostgreSQL (needs a TLS-capable tenantgate build; docs/deployment.md)."
  type        = bool
  default     = true
}

variable "redis_node_type" {
  description = "ElastiCache node type."
  type        = string
  default     = "cache.t4g.micro"
}

variable "redis_num_cache_clusters" {
  description = "Redis nodes (1: no replica)."
  type        = number
  default     = 1
}

variable "redis_transit_encryption_mode" {
  description = "required or preferred (docs/deployment.md)."
  type        = string
  default     = "required"
}

# --- alarms -----------------------------------------------------------------------------

variable "alarm_emails" {
  description = "Addresses notified by the alarms."
  type        = list(string)
  default     = []
}

variable "alarm_thresholds" {
  description = "Overrides of the alarm thresholds (see modules/monitoring)."
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
