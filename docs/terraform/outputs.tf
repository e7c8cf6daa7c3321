# No secret is an output: the cluster key and the tokens stay in variables.

output "api_endpoint" {
  description = "The Kubernetes API endpoint (the Reserved IP), also in the apiserver certificate's SANs."
  value       = local.endpoint
}

output "reserved_ip" {
  value = digitalocean_reserved_ip.api.ip_address
}

output "lb_public_ipv4" {
  value = digitalocean_droplet.lb[*].ipv4_address
}

output "control_plane_public_ipv4" {
  value = concat(
    [digitalocean_droplet.cp0.ipv4_address],
    [for n in local.cp_rest_names : digitalocean_droplet.cp[n].ipv4_address],
  )
}

output "worker_public_ipv4" {
  value = digitalocean_droplet.worker[*].ipv4_address
}
