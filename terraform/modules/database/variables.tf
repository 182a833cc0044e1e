variable "name" {
  description = "Name prefix, e.g. tenantgate-prod."
  type        = string
}

variable "vpc_id" {
  description = "The VPC."
  type        = string
}

variable "subnet_ids" {
  description = "Private subnets (one per AZ) of the DB subnet group."
  type        = list(string)
}

variable "client_security_group_ids" {
  description = "Security groups allowed to reach PostgreSQL, by a stable name (e.g. proxy, admin, demo). Nothing else is."
  type        = map(string)
}

variable "engine_version" {
  description = "PostgreSQL major version (minor versions are upgraded automatically in the maintenance window)."
  type        = string
  default     = "16"
}

variable "instance_class" {
  description = "RDS instance class."
  type        = string
  default     = "db.t4g.medium"
}

variable "allocated_storage_gb" {
  description = "Initial gp3 storage."
  type        = number
  default     = 50
}

variable "max_allocated_storage_gb" {
  description = "Storage autoscaling ceiling."
  type        = number
  default     = 500
}

variable "multi_az" {
  description = "A synchronous standby in another AZ (prod: true)."
  type        = bool
  default     = true
}

variable "deletion_protection" {
  description = "Refuse deletion of the instance (prod: true). Also takes a final snapshot on destroy."
  type        = bool
  default     = true
}

variable "backup_retention_days" {
  description = "Automated backup (and point-in-time recovery) window."
  type        = number
  default     = 14

  validation {
    condition     = var.backup_retention_days >= 1 && var.backup_retention_days <= 35
    error_message = "backup_retention_days must be between 1 and 35."
  }
}

variable "backup_window" {
  description = "Daily backup window (UTC)."
  type        = string
  default     = "03:00-04:00"
}

variable "maintenance_window" {
  description = "Weekly maintenance window (UTC); must not overlap the backup window."
  type        = string
  default     = "sun:04:30-sun:05:30"
}

variable "require_tls" {
  description = "rds.force_ssl = 1 and sslmode=require in the store URL. Needs a tenantgate build whose PostgreSQL client has TLS (see docs/deployment.md, \"TLS to the store and Redis\")."
  type        = bool
  default     = true
}

variable "database_name" {
  description = "Database tenantgate uses."
  type        = string
  default     = "tenantgate"
}

variable "username" {
  description = "Owner role of the database (tenantgate runs its migrations as it)."
  type        = string
  default     = "tenantgate"
}

variable "tags" {
  description = "Tags added to every resource."
  type        = map(string)
  default     = {}
}
