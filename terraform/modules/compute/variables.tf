variable "name" {
  description = "Name prefix, e.g. tenantgate-prod."
  type        = string
}

variable "environment" {
  description = "Environment name (dev, staging, prod)."
  type        = string
}

# --- network (outputs of modules/network) ------------------------------------------------

variable "vpc_id" {
  description = "The VPC."
  type        = string
}

variable "public_subnet_ids" {
  description = "Public subnets of the ALB, one per AZ."
  type        = list(string)
}

variable "private_subnet_ids" {
  description = "Private subnets of the tasks and the internal upstream NLB, one per AZ."
  type        = list(string)
}

variable "private_subnet_cidrs" {
  description = "CIDRs of the private subnets, in the same order (the NLB's fixed addresses are taken from them)."
  type        = list(string)
}

# --- image --------------------------------------------------------------------------------

variable "image" {
  description = "tenantgate image, pinned by tag or digest (e.g. ghcr.io/acme/tenantgate:1.4.0 or ...@sha256:...)."
  type        = string
}

variable "image_pull_secret_arn" {
  description = "Secrets Manager secret with {\"username\",\"password\"} for a private registry (a private GHCR package). Null for a public image or ECR."
  type        = string
  default     = null
}

variable "cpu_architecture" {
  description = "ARM64 (Graviton, cheaper per request) or X86_64. The release workflow publishes both."
  type        = string
  default     = "ARM64"

  validation {
    condition     = contains(["ARM64", "X86_64"], var.cpu_architecture)
    error_message = "cpu_architecture must be ARM64 or X86_64."
  }
}

variable "otel_collector_image" {
  description = "AWS Distro for OpenTelemetry collector, the proxy tasks' sidecar that publishes /metrics to CloudWatch."
  type        = string
  default     = "public.ecr.aws/aws-observability/aws-otel-collector:v0.43.3"
}

# --- edge -----------------------------------------------------------------------------------

variable "certificate_arn" {
  description = "ACM certificate of the HTTPS listener (the proxy's public host name and admin_hostname)."
  type        = string
}

variable "ssl_policy" {
  description = "TLS policy of the HTTPS listener (TLS 1.2 and 1.3 only)."
  type        = string
  default     = "ELBSecurityPolicy-TLS13-1-2-2021-06"
}

variable "ingress_cidrs" {
  description = "Who may reach the public listener."
  type        = list(string)
  default     = ["0.0.0.0/0"]
}

variable "admin_hostname" {
  description = "Host name the ALB forwards to the admin API (e.g. admin.gateway.example.com). Everything else goes to the proxy fleet."
  type        = string
}

variable "admin_allowed_cidrs" {
  description = "Source CIDRs allowed to reach the admin API through the ALB (operators' VPN, CI). Others get 403."
  type        = list(string)

  validation {
    condition     = length(var.admin_allowed_cidrs) > 0
    error_message = "Name at least one CIDR allowed to reach the admin API."
  }
}

variable "alb_deletion_protection" {
  description = "Refuse deletion of the ALB and NLB (prod: true)."
  type        = bool
  default     = true
}

variable "waf_rate_limit_per_ip" {
  description = "WAF: requests per 5 minutes from one client IP before it is blocked (a coarse flood guard in front of the proxies' per-tenant limits)."
  type        = number
  default     = 60000
}

variable "access_log_retention_days" {
  description = "Days ALB access logs are kept in S3."
  type        = number
  default     = 90
}

# --- stores (outputs of modules/database, modules/cache, modules/monitoring) ----------------

variable "store_url_secret_arn" {
  description = "Secret holding TENANTGATE__STORE__URL."
  type        = string
}

variable "redis_url_secret_arn" {
  description = "Secret holding TENANTGATE__REDIS__URL."
  type        = string
}

variable "secret_kms_key_arns" {
  description = "KMS keys of the store and Redis URL secrets (the execution role may decrypt with them)."
  type        = list(string)
}

variable "log_group_names" {
  description = "Log groups by service: proxy, admin, demo, otel, metrics."
  type        = map(string)
}

variable "log_group_arns" {
  description = "ARNs of the same log groups."
  type        = map(string)
}

variable "metrics_namespace" {
  description = "CloudWatch namespace of the proxy metrics (must match modules/monitoring)."
  type        = string
  default     = "TenantGate"
}

# --- tenantgate settings ------------------------------------------------------------------

variable "ratelimit_fail_mode" {
  description = "What the proxies do while Redis is unreachable: open (local buckets at limit / live proxies) or closed (503)."
  type        = string
  default     = "open"

  validation {
    condition     = contains(["open", "closed"], var.ratelimit_fail_mode)
    error_message = "ratelimit_fail_mode must be open or closed."
  }
}

variable "proxy_routes" {
  description = "TOML inline array of [[routes]] for the proxies, e.g. [{prefix = \"/api/v1/\", upstream = \"10.0.1.5:8080\"}]. Null: /api/v1/ to the demo upstream's internal NLB. Upstream host names are resolved once at start: use fixed addresses (an NLB's private IPs, a VPC endpoint service), not task IPs."
  type        = string
  default     = null
}

variable "extra_environment" {
  description = "More TENANTGATE__SECTION__KEY variables for every service (values as TOML: strings quoted)."
  type        = map(string)
  default     = {}
}

# --- sizing (see docs/deployment.md, "Sizing") ---------------------------------------------

variable "proxy" {
  description = "Proxy fleet: task size, Pingora threads (one per vCPU), autoscaling bounds and targets."
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
  default = {}
}

variable "admin" {
  description = "Admin API: task size and autoscaling bounds (argon2id logins are its CPU cost)."
  type = object({
    cpu                = optional(number, 512)
    memory             = optional(number, 1024)
    min                = optional(number, 2)
    max                = optional(number, 4)
    target_cpu_percent = optional(number, 60)
  })
  default = {}
}

variable "demo" {
  description = "Demo upstream: task size and autoscaling bounds."
  type = object({
    cpu                = optional(number, 256)
    memory             = optional(number, 512)
    min                = optional(number, 1)
    max                = optional(number, 3)
    target_cpu_percent = optional(number, 70)
  })
  default = {}
}

variable "use_fargate_spot" {
  description = "Run part of the proxy fleet on Fargate Spot (dev/staging): the first `min` tasks stay on on-demand Fargate."
  type        = bool
  default     = false
}

variable "tags" {
  description = "Tags added to every resource."
  type        = map(string)
  default     = {}
}
