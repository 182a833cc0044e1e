provider "aws" {
  region              = var.region
  allowed_account_ids = var.allowed_account_ids

  default_tags {
    tags = {
      Project     = "tenantgate"
      Environment = local.environment
      ManagedBy   = "terraform"
    }
  }
}
