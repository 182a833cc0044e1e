variable "name" {
  description = "Name prefix, e.g. tenantgate-prod."
  type        = string
}

variable "vpc_id" {
  description = "The VPC."
  type        = string
}

variable "subnet_ids" {
  description = "Private subnets (one per AZ) of the cache subnet group."
  type        = list(string)
}

variable "client_security_group_ids" {
  description = "Security groups allowed to reach Redis, by a stable name (the proxy fleet). Nothing else is."
  type        = map(string)
}

variable "engine_version" {
  description = "Redis OSS engine version."
  type        = string
  default     = "7.1"
}

variable "node_type" {
  description = "ElastiCache node type. The limiter leases tokens in batches (~1 Redis call per 70 decisions in benches/RESULTS.md), so small nodes go far."
  type        = string
  default     = "cache.t4g.small"
}

variable "num_cache_clusters" {
  description = "Nodes in the replication group: 1 (no replica) or more (a replica per extra node, automatic failover and Multi-AZ)."
  type        = number
  default     = 2

  validation {
    condition     = var.num_cache_clusters >= 1 && var.num_cache_clusters <= 6
    error_message = "num_cache_clusters must be between 1 and 6."
  }
}

variable "transit_encryption_mode" {
  description = "\"required\": TLS only. \"preferred\": TLS and plaintext accepted (only while migrating clients to TLS; see docs/deployment.md, \"TLS to the store and Redis\")."
  type        = string
  default     = "required"

  validation {
    condition     = contains(["required", "preferred"], var.transit_encryption_mode)
    error_message = "transit_encryption_mode must be required or preferred."
  }
}

variable "snapshot_retention_days" {
  description = "Daily snapshots kept. Redis holds only token buckets and heartbeats (rebuilt within a window), so snapshots are for forensics, not recovery."
  type        = number
  default     = 1
}

variable "log_retention_days" {
  description = "Retention of the slow log and engine log."
  type        = number
  default     = 365
}

variable "tags" {
  description = "Tags added to every resource."
  type        = map(string)
  default     = {}
}
