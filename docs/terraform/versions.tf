terraform {
  required_version = ">= 1.5.0"
  required_providers {
    digitalocean = {
      source  = "digitalocean/digitalocean"
      version = "~> 2.40"
    }
  }
}

# The token Terraform itself uses: from the environment (DIGITALOCEAN_TOKEN)
# or a -var-file outside the repository. Never commit it.
provider "digitalocean" {
  token = var.do_token
}
