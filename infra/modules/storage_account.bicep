// Storage account: the workspace's default datastore and the training-data container that the
// retraining Event Grid subscription watches.

@description('Short name shared by every resource of this deployment (lowercase letters and digits).')
param baseName string

@description('Azure region.')
param location string

@description('Tags applied to every resource.')
param tags object

@description('Blob container that holds training data; blob-created events on it trigger retraining.')
param trainingDataContainerName string

@description('Blob container where Event Grid parks events it could not deliver.')
param deadLetterContainerName string

// Storage names are global, 3-24 lowercase letters and digits: "st" + baseName + a stable suffix.
var storageAccountName = take(toLower('st${baseName}${uniqueString(resourceGroup().id)}'), 24)

resource storageAccount 'Microsoft.Storage/storageAccounts@2024-01-01' = {
  // checkov:skip=CKV_AZURE_35: no VNet in this template; clusters without VNet injection reach storage over its public endpoint (README: network isolation)
  // checkov:skip=CKV_AZURE_59: same reason; anonymous access is still off (allowBlobPublicAccess false) and every request needs a key or Entra ID
  // checkov:skip=CKV_AZURE_43: the name is take(toLower(...), 24) of letters and digits, which checkov cannot evaluate
  name: storageAccountName
  location: location
  tags: tags
  // GRS: the training data is the input of every retraining run; a second region copy is cheap insurance.
  sku: {
    name: 'Standard_GRS'
  }
  kind: 'StorageV2'
  properties: {
    accessTier: 'Hot'
    minimumTlsVersion: 'TLS1_2'
    supportsHttpsTrafficOnly: true
    allowBlobPublicAccess: false
    // Azure ML's default datastores and compute file shares still authenticate with the account key.
    allowSharedKeyAccess: true
    defaultToOAuthAuthentication: true
    allowCrossTenantReplication: false
    // The workspace's default storage must not have a hierarchical namespace.
    isHnsEnabled: false
    publicNetworkAccess: 'Enabled'
    networkAcls: {
      bypass: 'AzureServices'
      defaultAction: 'Allow'
    }
    encryption: {
      keySource: 'Microsoft.Storage'
      services: {
        blob: {
          enabled: true
          keyType: 'Account'
        }
        file: {
          enabled: true
          keyType: 'Account'
        }
      }
    }
  }
}

resource blobService 'Microsoft.Storage/storageAccounts/blobServices@2024-01-01' = {
  parent: storageAccount
  name: 'default'
  properties: {
    // Versioning keeps the exact bytes a model was trained on even after a file is overwritten.
    isVersioningEnabled: true
    deleteRetentionPolicy: {
      enabled: true
      days: 7
    }
    containerDeleteRetentionPolicy: {
      enabled: true
      days: 7
    }
  }
}

resource trainingDataContainer 'Microsoft.Storage/storageAccounts/blobServices/containers@2024-01-01' = {
  parent: blobService
  name: trainingDataContainerName
  properties: {
    publicAccess: 'None'
  }
}

resource deadLetterContainer 'Microsoft.Storage/storageAccounts/blobServices/containers@2024-01-01' = {
  parent: blobService
  name: deadLetterContainerName
  properties: {
    publicAccess: 'None'
  }
}

output id string = storageAccount.id
output name string = storageAccount.name
output blobEndpoint string = storageAccount.properties.primaryEndpoints.blob
output trainingDataContainerName string = trainingDataContainer.name
output deadLetterContainerName string = deadLetterContainer.name
