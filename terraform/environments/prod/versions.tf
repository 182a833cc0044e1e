terraform {
  required_version = ">= 1.10"

  required_providers {
    aws = {
      source  = "hashicorp/aws"
      version = "~> 6.0"
    }
    random = {
      source  = "hashicorp/random"
      version = "~> 3.6"
    }
  }

  # Partial configuration: bucket, key, region (and optionally kms_key_id) come from
  # `terraform init -backend-config=backend.hcl` (see backend.hcl.example) or from
  # -backend-config flags in .github/workflows/deploy.yml. Locking uses an S3 lock file
  # next to the state (use_lockfile), no DynamoDB table needed.
  backend "s3" {
    encrypt      = true
    use_lockfile = true
  }
}
