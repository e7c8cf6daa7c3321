# Secrets are variables marked sensitive: give them through a *.tfvars file
# kept outside the repository (see terraform.tfvars.example) or TF_VAR_*
# environment variables. Terraform keeps them in its state: use an encrypted
# remote state backend, or keep the local state file root-only.

variable "do_token" {
  description = "DigitalOcean API token Terraform uses to build the droplets."
  type        = string
  sensitive   = true
}

variable "agent_do_token" {
  description = "DigitalOcean API token the kubeha agents on the lb droplets use to move the Reserved IP (a token limited to reserved_ip and droplet read scopes is enough). Written to /etc/kubeha/do-token (0600) on lb droplets only."
  type        = string
  sensitive   = true
}

variable "cluster_key" {
  description = "The cluster key: the output of `kubeha-ctl keygen` (base64, 32 bytes). Written to /etc/kubeha/cluster.key (0600) on every droplet."
  type        = string
  sensitive   = true
  validation {
    condition     = can(regex("^[A-Za-z0-9+/]{43}=$", trimspace(var.cluster_key)))
    error_message = "cluster_key must be one base64 key of 32 bytes, as printed by `kubeha-ctl keygen`."
  }
}

variable "control_key" {
  description = "The control key: another `kubeha-ctl keygen` output. Written to /etc/kubeha/control.key (0600) on control planes and lb droplets only; workers never get it."
  type        = string
  sensitive   = true
  validation {
    condition     = can(regex("^[A-Za-z0-9+/]{43}=$", trimspace(var.control_key)))
    error_message = "control_key must be one base64 key of 32 bytes, as printed by `kubeha-ctl keygen`."
  }
}

variable "control_public_key" {
  description = "The control key's public half (`kubeha-ctl keygen --public-of` a file holding control_key): workers verify role proofs with it. Not a secret."
  type        = string
  validation {
    condition     = can(regex("^ed25519:[A-Za-z0-9+/]{43}=$", trimspace(var.control_public_key)))
    error_message = "control_public_key must be `ed25519:` and 32 bytes of base64, as printed by `kubeha-ctl keygen --public-of`."
  }
}

variable "cluster_name" {
  description = "kubeha `cluster` name; nodes of another cluster are ignored."
  type        = string
  default     = "kubeha"
}

variable "region" {
  description = "DigitalOcean region slug."
  type        = string
  default     = "fra1"
}

variable "vpc_cidr" {
  description = "IP range of the VPC the droplets share."
  type        = string
  default     = "10.108.0.0/20"
}

variable "image" {
  description = "Droplet image: kubeha is built for Debian 12."
  type        = string
  default     = "debian-12-x64"
}

variable "lb_size" {
  type    = string
  default = "s-1vcpu-1gb"
}

variable "control_plane_size" {
  type    = string
  default = "s-2vcpu-4gb"
}

variable "worker_size" {
  type    = string
  default = "s-2vcpu-4gb"
}

variable "worker_count" {
  description = "Number of worker droplets."
  type        = number
  default     = 2
  validation {
    condition     = var.worker_count >= 0 && var.worker_count <= 50
    error_message = "worker_count must be 0 to 50."
  }
}

variable "ssh_key_fingerprints" {
  description = "Fingerprints of SSH keys already in the DigitalOcean account, for root login."
  type        = list(string)
}

variable "ssh_cidrs" {
  description = "Addresses allowed to reach port 22 (e.g. your office's /32). Nothing else but 6443 on the lb droplets is open to the internet."
  type        = list(string)
  validation {
    condition     = length(var.ssh_cidrs) > 0 && !contains(var.ssh_cidrs, "0.0.0.0/0") && !contains(var.ssh_cidrs, "::/0")
    error_message = "ssh_cidrs must list the addresses you log in from, not the whole internet."
  }
}

variable "kubeha_deb_url" {
  description = "HTTPS URL the droplets download the kubeha .deb from (a release asset or a bucket you control)."
  type        = string
  validation {
    condition     = startswith(var.kubeha_deb_url, "https://")
    error_message = "kubeha_deb_url must be an https:// URL."
  }
}

variable "kubeha_deb_sha256" {
  description = "SHA-256 of that .deb (`sha256sum kubeha_*.deb`); the install stops if it differs."
  type        = string
  validation {
    condition     = can(regex("^[0-9a-f]{64}$", var.kubeha_deb_sha256))
    error_message = "kubeha_deb_sha256 must be 64 lower-case hex digits."
  }
}
