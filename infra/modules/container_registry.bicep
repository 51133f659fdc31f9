// Container registry where Azure ML builds and caches the chatft-train / chatft-inference images.

@description('Short name shared by every resource of this deployment (lowercase letters and digits).')
param baseName string

@description('Azure region.')
param location string

@description('Tags applied to every resource.')
param tags object

// Registry names are global, 5-50 letters and digits.
var registryName = toLower('cr${baseName}${uniqueString(resourceGroup().id)}')

resource registry 'Microsoft.ContainerRegistry/registries@2023-07-01' = {
  // checkov:skip=CKV_AZURE_139: disabling public access needs Premium plus private endpoints and a VNet, out of scope here (README: network isolation)
  // checkov:skip=CKV_AZURE_166: quarantine holds every pushed image until a scanner releases it, which would block Azure ML's own image builds
  // checkov:skip=CKV_AZURE_233: zone redundancy needs Premium; images are rebuilt from environments/ specs, so a zone outage costs a rebuild, not data
  name: registryName
  location: location
  tags: tags
  // Standard: enough storage and throughput for a few multi-GB CUDA images; Premium only adds networking features.
  sku: {
    name: 'Standard'
  }
  properties: {
    // No shared admin password: clusters pull with the user-assigned identity (AcrPull).
    adminUserEnabled: false
    anonymousPullEnabled: false
    publicNetworkAccess: 'Enabled'
  }
}

output id string = registry.id
output name string = registry.name
