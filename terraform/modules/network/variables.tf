variable "name" {
  description = "Name prefix of every resource, e.g. tenantgate-prod."
  type        = string
}

variable "cidr_block" {
  description = "IPv4 CIDR of the VPC. Split into 3 public and 3 private subnets (/20 each inside a /16)."
  type        = string
  default     = "10.40.0.0/16"

  validation {
    condition     = can(cidrhost(var.cidr_block, 0)) && tonumber(split("/", var.cidr_block)[1]) <= 18
    error_message = "cidr_block must be a valid IPv4 CIDR of /18 or larger."
  }
}

variable "availability_zones" {
  description = "Exactly three availability zones of the region."
  type        = list(string)

  validation {
    condition     = length(var.availability_zones) == 3
    error_message = "The network spans exactly three availability zones."
  }
}

variable "single_nat_gateway" {
  description = "One NAT gateway for all AZs (cheaper, for dev) instead of one per AZ (a zone outage keeps egress in the others)."
  type        = bool
  default     = false
}

variable "flow_log_retention_days" {
  description = "Retention of the VPC flow logs."
  type        = number
  default     = 365
}

variable "flow_log_traffic_type" {
  description = "ACCEPT, REJECT or ALL."
  type        = string
  default     = "ALL"

  validation {
    condition     = contains(["ACCEPT", "REJECT", "ALL"], var.flow_log_traffic_type)
    error_message = "flow_log_traffic_type must be ACCEPT, REJECT or ALL."
  }
}

variable "tags" {
  description = "Tags added to every resource."
  type        = map(string)
  default     = {}
}
